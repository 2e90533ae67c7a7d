"""Real-model benchmark of ptq against ONNX Runtime's quantize_static (issue 4).

Run from the repository root with the project's Python:

    python -m bench.fetch        # wheels -> bench/cache/models/
    python -m bench.data         # rendered text, pages and real files -> bench/cache/data/
    python -m bench.run [--smoke]  # every quantizer in its own process -> bench/results.{md,json}
"""
