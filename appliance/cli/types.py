"""Types the command modules share."""

import argparse

SubParsers = argparse._SubParsersAction[argparse.ArgumentParser]  # what register() receives
