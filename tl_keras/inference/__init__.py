"""After training: a workdir's model read back, evaluated, used on new images, exported.

trained.py     the trained model of a workdir, its classes, and the data it was made on
evaluate.py    metrics, the confusion matrix and the most confident mistakes
predict.py     top-k labels for new image files
export/        SavedModel, TFLite and ONNX artifacts, each checked against the model
"""
