"""``labelled.csv``: what ``cascade label`` (:mod:`cascade_export.distill.commands`) writes and the build
(:mod:`cascade_export.build.commands`) reads; columns ``id``, ``text``, ``label``, then these. Both import the names
from here, so neither imports the other for them."""

#: Which sample a row came from, :data:`UNIFORM` or :data:`ACTIVE`; a file without the column is all uniform.
SAMPLE_COLUMN = "sample"
UNIFORM, ACTIVE = "uniform", "active"
#: The teacher's probability of label j is in column ``prob_<j>`` (its soft labels).
PROB_PREFIX = "prob_"
