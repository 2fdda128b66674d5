"""The synthetic text-to-video task: coloured shapes moving over plain backgrounds.

``vocabulary`` holds the words and colours, ``render`` samples and rasterises clips, ``dataset``
writes them in the video-folder layout the trainer reads (``qvgen data synthetic``), ``tracking``
finds and measures the object in a frame, and ``scorer`` turns that into scores of how well a
clip shows its prompt (``score_clip``, ``score_clips``; for ``qvgen eval``).
"""
