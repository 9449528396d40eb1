"""The in-image runtime: reads /opt/omi/omi.json and the environment, loads the model, and
serves exactly one interface. Imports nothing from the build side (it ships alone)."""
