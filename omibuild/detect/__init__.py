"""What `omibuild init` reads from a model repository, without importing or unpickling
anything: where the model is and its format (model), what a pickle imports and records
(pickles), the training environment's distributions (environment), what the model needs
(needs), and an example input it can vouch for (examples)."""
