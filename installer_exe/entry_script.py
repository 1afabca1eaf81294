"""The executable's script: PyInstaller freezes this, and it runs the installer's entry point."""

import sys

from appliance.installer import main

if __name__ == "__main__":
    sys.exit(main())
