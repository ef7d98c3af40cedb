"""Running a trained model outside charnet: ONNX export, and generation in a browser.

`charnet.export.step` is one generation step as a plain graph; `charnet.export.onnx`
exports it with torch's ONNX exporter; `charnet.export.manifest` describes the result;
`charnet.export.runtime` drives it with onnxruntime, sampling as the page does;
`charnet.export.web` writes the static folder whose page (`web/`) generates with
onnxruntime-web. Only shared model pieces and the inference package's sampling pieces
(its randomness, its UTF-8 masks) are imported here, nothing from training.
"""
