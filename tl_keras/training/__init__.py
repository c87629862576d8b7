"""Training: a schedule of phases run on a model, with every artifact kept in the workdir."""
