"""The Textual installer: screens over `appliance.site.plan.InstallPlan` (`appliance-installer`)."""
