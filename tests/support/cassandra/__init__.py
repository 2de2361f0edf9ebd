"""A real single-node Apache Cassandra for the tests: ``node.py`` runs it, ``pom.xml`` lists
the jars."""
