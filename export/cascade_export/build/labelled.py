"""``labelled.csv``: what ``cascade label`` (:mod:`cascade_export.distill.commands`) writes and the build
(:mod:`cascade_export.build.commands`) reads; columns ``id``, ``text``, ``label``, then these. Both import the names
from here, so neither imports the other for them."""

#: Which sample a row came from, :data:`UNIFORM` or :data:`ACTIVE` (the teacher's), or :data:`GOLD` (the user's
#: examples, with their own labels); a file without the column is all uniform. Only uniform rows calibrate.
SAMPLE_COLUMN = "sample"
UNIFORM, ACTIVE, GOLD = "uniform", "active", "gold"
#: How many times a row counts in training (an integer; a file without the column counts each row once).
WEIGHT_COLUMN = "weight"
#: The teacher's probability of label j is in column ``prob_<j>`` (its soft labels).
PROB_PREFIX = "prob_"
