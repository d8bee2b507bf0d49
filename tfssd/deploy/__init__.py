"""Deployment: SavedModel and TFLite exports, loading any trained model, the HTTP endpoint."""
