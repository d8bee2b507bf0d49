"""Configuration, the ground floor: the run's typed config, SageMaker's hyperparameter table,
tfssd's options, the SageMaker container's files and the choice of precision."""
