"""Descriptor extraction: one module per component (narration, audio, camera, objects, hands), describe.py for
the clip text, runner.py for the ``leap extract`` stage. Record format: ``schemas/descriptors.schema.json``."""
