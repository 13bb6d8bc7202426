"""Plug-in methods: each module registers its parts in `cream.plugins.registry` and is imported before the first
lookup, so a method is one module here plus its config file in `conf/`."""
