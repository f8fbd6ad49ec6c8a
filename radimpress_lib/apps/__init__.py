"""Layer 6 - user-facing applications: the drafting CLI, the physician review widget and the patient rewrite.

Imports the layers below.
"""
