"""The service layer: no HTTP server and no IPython here. The doors (``server_extension/``, ``kernel/``, ``cli/``)
call it; it never imports them. The data path of a prediction: ``api`` → ``registry`` (resolve) → ``tensors``
(validate) → ``cache`` → ``engine`` (run) → ``cache`` → the result (``records``), encoded by ``protocol``."""
