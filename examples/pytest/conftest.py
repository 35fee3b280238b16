# Load the forge lease plugin (forge_lease.py, next to this file) for every
# test in this folder. In your own project, copy forge_lease.py next to your
# conftest.py and add the same line, or install it and use -p forge_lease.
pytest_plugins = ["forge_lease"]
