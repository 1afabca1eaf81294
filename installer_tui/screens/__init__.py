"""The installer's screens: find a bundle, trust its signer, install, status."""
