"""The synthetic shop: a realistic, messy clickstream and catalog from a seed, without Spark.

Modules, from data to rows:

* :mod:`~recaug_spark.synthetic.vocabulary`: the shop's words and shares (categories, countries,
  devices, hours) and the names of the planted mess;
* :mod:`~recaug_spark.synthetic.draws`: keyed random draws, a function of (seed, stream, key, draw);
* :mod:`~recaug_spark.synthetic.plan`: the driver-side plan (catalog shape, users, calendar, rates)
  and the pure functions of an item index (popularity, list price);
* :mod:`~recaug_spark.synthetic.simulator`: numpy simulation of users' events and planted mess;
* :mod:`~recaug_spark.synthetic.rows`: numeric arrays → Arrow record batches of strings.

The Spark stage that runs it on executors and writes the tables is
:mod:`recaug_spark.stages.generate`.
"""
