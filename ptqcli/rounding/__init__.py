"""How weights become integers beyond rounding to nearest: AdaRound (``sequential``, with
``calibrators.adaround``), bias correction, cross-layer equalization (``equalize``) and the
data-free mode (``datafree``).  Options in ``options``; layers seen as matrix products in
``layers``; the x86 pair bound kept for learned codes in ``pairs``."""
