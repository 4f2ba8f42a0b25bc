"""Serving a tf_fastbat export with TensorFlow Serving: models.config, docker-compose.yml and a REST/gRPC client.

`python -m export.client --help`; the SavedModels themselves come from `python -m tf_fastbat.export`.
"""
