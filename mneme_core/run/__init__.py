"""The run directory, the contract between the stages and the dashboard.

``store`` reads and writes the manifest and the latents table (every write atomic);
``reader`` is the read-only ``Run`` users and pages open; ``search`` reads the description
index; ``sharing`` pushes and pulls runs on a hub; ``pipeline`` runs the stages in order,
resuming and invalidating by config. Only ``pipeline`` knows the stages, and it imports
them by name when it runs them, so nothing here depends on a stage.
"""
