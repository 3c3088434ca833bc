"""Built-in tiny CLIP and procedural "<colour> <shape>" data for the offline demo.

``render`` (numpy/PIL only): COLOURS, SHAPES, CLASSNAMES, TEMPLATE, DOWNSTREAM_HUE, SHIFT_DOMAIN, render().
``model`` (torch/open_clip): MODEL_NAME, PRETRAINED, TINY_CLIP_CONFIG, WEIGHTS_PATH, build_tiny_clip(),
weights_sha256(), get_tokenizer(). ``pretrain``: the reproducible pretraining and its validation.
"""
