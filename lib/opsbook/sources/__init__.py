"""Readers of the teams' input files.

==================  ====================================================================
module              reads
==================  ====================================================================
:mod:`.files`       a folder or ``gs://`` prefix of a dataset's files, by partition; ZIP parts
:mod:`.city_csv`    City-format CSV parts, streamed in blocks, good rows and quarantined ones
:mod:`.city_types`  the City's values as typed Arrow arrays, and the reasons a value fails
:mod:`.text`        bytes into blocks of whole lines (length bounded), and their encodings
==================  ====================================================================
"""
