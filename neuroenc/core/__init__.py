"""The engine: registry files (config), the plugin manager, the run context, caches and
atomic writes, and the runner that drives data -> features -> model -> scores -> results."""
