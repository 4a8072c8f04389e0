"""The built-in plugins. Each registers through the ``kibitz`` entry-point group, like any other."""
