import Foundation

/// How the agent writes and reads its own JSON files (configs, template and snapshot records):
/// sorted and indented for operators who read them, dates as ISO 8601.
extension JSONEncoder {
    static var berth: JSONEncoder {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
        encoder.dateEncodingStrategy = .iso8601
        return encoder
    }
}

extension JSONDecoder {
    static var berth: JSONDecoder {
        let decoder = JSONDecoder()
        decoder.dateDecodingStrategy = .iso8601
        return decoder
    }
}
