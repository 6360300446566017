/// Where a migrated VPS's disk is read from (the source) or written to (the target): a loop
/// image file, or for a pool VPS a subvolume (the source's) or a directory of the pool that
/// receives the snapshots (the target's).
public enum MigrationDisk: Sendable, Equatable {
    case image(String)
    case volume(String)
}
