import CIsolation

/// One control-file write.
public struct CgroupWrite: Equatable, Sendable {
    public var path: String
    public var value: String
    public init(path: String, value: String) {
        self.path = path
        self.value = value
    }

    /// Stands for the "MAJ:MIN" of the VPS's loop device in `ioSettings` values: the device is
    /// known only once the monitor has attached the disk.
    public static let devicePlaceholder = "{device}"
}
