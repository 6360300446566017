/// The template tree a layered VPS shares, and where its own disk is mounted.
public struct SharedLayer: Equatable, Sendable {
    public var template: String
    public var diskMount: String

    public init(template: String, diskMount: String) {
        self.template = template
        self.diskMount = diskMount
    }
}
