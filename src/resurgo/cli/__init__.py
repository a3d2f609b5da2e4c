"""The command-line interface: a thin layer that parses, calls the engine and renders.

``main.py`` holds global options, dispatch and the exit-code rule;
``cmd_<group>.py`` one module per command group; ``render.py`` all output;
``context.py`` the lazily resolved settings a command may use.
"""
