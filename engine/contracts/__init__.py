"""The ground floor: what a plugin implements and how the engine finds it.

Component contracts (components), hook specifications (hookspecs), the registry of named
components (registry), the plugin host that loads entry points (host), the errors and exit
codes (errors), and the wording helpers messages share (wording). Imports nothing else of
medadapt's.
"""
