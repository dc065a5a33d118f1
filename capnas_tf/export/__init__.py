"""Deployable forms of a trained captioner: a TF Serving SavedModel and an ONNX graph.

    export_saved_model(captioner, vocab, "<workdir>/export/saved_model")  # → …/saved_model/1
    export_onnx(captioner, vocab, "<workdir>/export")                     # → captioner.onnx, vocab.txt
"""
