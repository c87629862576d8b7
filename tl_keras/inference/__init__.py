"""After training: a workdir's model read back, evaluated, used on new images, exported.

trained.py            the trained model of a workdir, its classes, and the data it was made on
evaluation.py         an evaluation's numbers: metrics, confusion matrix, confident mistakes
evaluation_plots.py   its figures: the confusion matrix, the gallery of confident mistakes
evaluate.py           a workdir's model evaluated and its report written (the command's work)
predict.py            top-k labels for new image files
export/               SavedModel, TFLite and ONNX artifacts, each checked against the model
"""
