"""The search simulator's formats, shared by the simulator service (which serves them) and the trainer
(which fine-tunes the simulator on them): the ZeroSearch document prompts and the document layout."""
