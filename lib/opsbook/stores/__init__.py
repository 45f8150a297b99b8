"""Where data is kept, behind one small API each.

==================  ====================================================================
module              store
==================  ====================================================================
:mod:`.postgres`    connections, identifiers, dataset tables, binary COPY from Arrow
:mod:`.uri`         files and objects: a local folder or ``gs://`` behind one API
:mod:`.gcs`         Google Cloud Storage through ``google-cloud-storage`` (used by :mod:`.uri`)
:mod:`.gcs_emulator`  a threaded local GCS for tests and local runs
:mod:`.redis`       a Redis client for the configured or embedded server
==================  ====================================================================
"""
