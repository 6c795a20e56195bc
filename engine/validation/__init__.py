"""Validation: inference and figures on a labelled split (evaluate), the figures themselves
(metrics), the validate job (job) and the clinician report (report). Imports from the floors
below training and from training's train job helpers.
"""
