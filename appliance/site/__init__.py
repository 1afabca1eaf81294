"""The site: its directory layout and releases, the install plan and its steps, rollback."""
