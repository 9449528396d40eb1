"""omibuild: declarative builds of Open Model Interface container images."""

__version__ = "0.1.0"
