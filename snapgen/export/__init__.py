"""Deployment exports: Core ML (`snapgen.export.coreml`)."""
