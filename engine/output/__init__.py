"""The ground floor's other half: how anything leaves the engine.

Strict JSON, text that shows data as it is and CSV cells a spreadsheet reads as text (text),
files written whole or not at all (atomic), and one look for progress (progress). Imports
only from contracts.
"""
