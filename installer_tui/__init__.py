"""installer_tui package."""
