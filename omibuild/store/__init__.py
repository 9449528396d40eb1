"""What omibuild keeps on this machine: the content-addressed cache of model files and
build contexts, model layers made from them (their digests memoised), and what it all uses
on disk."""
