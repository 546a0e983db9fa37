"""xkslab's top floor: the command line (``xkslab.cli``) and the lab orchestration (``xkslab.lab``: ``up``,
``demo``, bootstrap). It imports the services' public entry points; no service imports it."""

__version__ = "0.1.0"
