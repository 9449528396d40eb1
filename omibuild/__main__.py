from omibuild.cli import entry

entry()
