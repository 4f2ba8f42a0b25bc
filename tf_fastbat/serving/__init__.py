"""Serving exported classifiers with TF Serving: the protocol (names, no TensorFlow), the serving graph, writing
and loading SavedModel versions, publishing a trained checkpoint, and the REST/gRPC client."""
