"""Developer tools below the command line: finding or installing etcd (`etcd_provision`),
local etcd clusters for tests and `keel dev etcd` (`etcd_cluster`), and regenerating the etcd
descriptor (`gen_proto`). They use the store at most.
"""
