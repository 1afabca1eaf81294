"""`python -m installer_tui`: the same as `appliance-installer`."""

from installer_tui.app import main

raise SystemExit(main())
