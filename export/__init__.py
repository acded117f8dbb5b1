"""ONNX export of served networks (see the export issue); nothing is exported yet."""
