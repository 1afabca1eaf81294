"""The Textual installer: screens over `appliance.plan.InstallPlan` (`appliance-installer`)."""
