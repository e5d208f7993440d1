"""``loci-fast playground``: a local web page to edit one slot's latent (gestalt bits, position, size)
and see what the decoder of a trained original Loci or Loci-s makes of it (reference loci.md §5).

Modules: ``latent`` (the slot latent and its file formats), ``slots`` (one decoder per model kind,
rendering the four views), ``images`` (background and PNG), ``server`` (the HTTP API and the page),
``command`` (the CLI). The page itself is ``static/`` (package data, no external assets).
"""
