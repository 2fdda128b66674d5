"""The synthetic text-to-video task: coloured shapes moving over plain backgrounds.

``vocabulary`` holds the words and colours, ``render`` samples and rasterises clips, ``dataset``
writes them in the video-folder layout the trainer reads (``qvgen data synthetic``), and
``scorer`` measures how well a clip shows its prompt (``qvgen eval``).
"""
