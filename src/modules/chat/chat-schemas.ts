import { Type } from 'typebox'

const Turn = Type.Object(
  {
    role: Type.Union([Type.Literal('user'), Type.Literal('assistant')]),
    content: Type.String({ minLength: 1, maxLength: 20_000 }),
  },
  { additionalProperties: false },
)

const Chunk = Type.Union([
  Type.String({ minLength: 1, maxLength: 20_000 }),
  Type.Object(
    {
      text: Type.String({ minLength: 1, maxLength: 20_000 }),
      title: Type.Optional(Type.String({ maxLength: 500 })),
      source: Type.Optional(Type.String({ maxLength: 2_000, description: 'Where it comes from, e.g. a URL' })),
    },
    { additionalProperties: false },
  ),
])

export const ChatBody = Type.Object(
  {
    message: Type.String({ minLength: 1, maxLength: 10_000 }),
    context: Type.Optional(
      Type.Object(
        {
          chunks: Type.Optional(Type.Array(Chunk, { maxItems: 50, description: 'Passages to ground the answer in' })),
          videoContext: Type.Optional(
            Type.Object(
              {
                title: Type.Optional(Type.String({ maxLength: 500 })),
                url: Type.Optional(Type.String({ maxLength: 2_000 })),
                transcript: Type.Optional(Type.String({ maxLength: 100_000 })),
                currentTime: Type.Optional(Type.Number({ minimum: 0, description: 'Seconds into the video' })),
              },
              { additionalProperties: false },
            ),
          ),
        },
        { additionalProperties: false },
      ),
    ),
    conversationHistory: Type.Optional(Type.Array(Turn, { maxItems: 50, description: 'Earlier turns, oldest first' })),
    projectId: Type.Optional(Type.String({ minLength: 1, maxLength: 100 })),
    model: Type.Optional(
      Type.String({
        minLength: 1,
        maxLength: 200,
        description: 'Default CHAT_DEFAULT_MODEL; claude-* models go to Anthropic, others to OpenAI',
      }),
    ),
  },
  { additionalProperties: false },
)

const EVENT_STREAM_DESCRIPTION =
  'text/event-stream. Every event has an `id:` and one JSON object on its `data:` line: ' +
  '`{"type":"content","content":"..."}` for each piece of the answer, then exactly one of ' +
  '`{"type":"done","messageId","sources":[...],"usage":{model,inputTokens,outputTokens,totalTokens},"fullContent"}` or ' +
  '`{"type":"error","error":"<message>","code":"<CODE>"}`.'

export const EventStreamResponse = {
  description: EVENT_STREAM_DESCRIPTION,
  content: { 'text/event-stream': { schema: Type.String() } },
}

export const UsageQuery = Type.Object(
  {
    orgId: Type.Optional(Type.String({ minLength: 1, maxLength: 100, description: 'Default: your personal org' })),
    from: Type.Optional(Type.String({ format: 'date-time', description: 'Inclusive; default 30 days before `to`' })),
    to: Type.Optional(Type.String({ format: 'date-time', description: 'Exclusive; default now' })),
  },
  { additionalProperties: false },
)

export const UsageReportSchema = Type.Object(
  {
    orgId: Type.String(),
    from: Type.String({ format: 'date-time' }),
    to: Type.String({ format: 'date-time' }),
    data: Type.Array(
      Type.Object({
        day: Type.String({ description: 'UTC date, YYYY-MM-DD' }),
        model: Type.String(),
        requests: Type.Integer(),
        inputTokens: Type.Integer(),
        outputTokens: Type.Integer(),
      }),
    ),
  },
  { $id: 'UsageReport', title: 'UsageReport', description: 'Chat tokens per UTC day and model' },
)

export const chatSchemas = [UsageReportSchema]

const Timestamp = Type.String({ format: 'date-time' })
const conversationFields = {
  id: Type.String({ pattern: '^cnv_' }),
  orgId: Type.String(),
  projectId: Type.Union([Type.String(), Type.Null()]),
  title: Type.String(),
  model: Type.Union([Type.String(), Type.Null()], { description: 'Default CHAT_DEFAULT_MODEL' }),
  createdAt: Timestamp,
  updatedAt: Timestamp,
}
export const MessageSchema = Type.Object(
  {
    id: Type.String({ pattern: '^msg_' }),
    role: Type.Union([Type.Literal('user'), Type.Literal('assistant')]),
    content: Type.String({ description: 'For an answer that did not complete: the text produced' }),
    status: Type.Union(
      ['streaming', 'complete', 'stopped', 'incomplete', 'error'].map((status) => Type.Literal(status)),
      { description: 'incomplete: the provider cut the answer (or its server went away); error: no answer' },
    ),
    model: Type.Union([Type.String(), Type.Null()]),
    errorCode: Type.Union([Type.String(), Type.Null()]),
    createdAt: Timestamp,
    updatedAt: Timestamp,
  },
  { $id: 'ChatMessage', title: 'ChatMessage' },
)
export const ConversationSchema = Type.Object(conversationFields, { $id: 'Conversation', title: 'Conversation' })
export const ConversationWithMessagesSchema = Type.Object(
  {
    ...conversationFields,
    messages: Type.Array(Type.Unsafe(Type.Ref('ChatMessage')), { description: 'The latest 200, oldest first' }),
  },
  { $id: 'ConversationWithMessages', title: 'ConversationWithMessages' },
)
export const ConversationListSchema = Type.Object(
  { data: Type.Array(Type.Unsafe(Type.Ref('Conversation'))), nextCursor: Type.Union([Type.String(), Type.Null()]) },
  { $id: 'ConversationList', title: 'ConversationList' },
)
export const StopResultSchema = Type.Object(
  {
    messageId: Type.String(),
    status: Type.String({
      description: 'stopping: the generating instance was told to stop; otherwise the status the answer already had',
    }),
  },
  { $id: 'StopResult', title: 'StopResult' },
)

export const conversationSchemas = [
  MessageSchema,
  ConversationSchema,
  ConversationWithMessagesSchema,
  ConversationListSchema,
  StopResultSchema,
]

export const CreateConversationBody = Type.Object(
  {
    orgId: Type.Optional(
      Type.String({ minLength: 1, maxLength: 100, description: "Default: your personal org, or the project's" }),
    ),
    projectId: Type.Optional(Type.String({ minLength: 1, maxLength: 100 })),
    title: Type.Optional(Type.String({ maxLength: 200 })),
    model: Type.Optional(Type.String({ minLength: 1, maxLength: 200 })),
  },
  { additionalProperties: false },
)
export const SendMessageBody = Type.Object(
  { content: Type.String({ minLength: 1, maxLength: 10_000 }) },
  { additionalProperties: false },
)
export const ConversationParams = Type.Object(
  { id: Type.String({ minLength: 1, maxLength: 100 }) },
  { additionalProperties: false },
)
export const ResumeQuery = Type.Object(
  {
    lastEventId: Type.Optional(
      Type.String({
        maxLength: 100,
        description: 'Instead of the Last-Event-ID header (for clients that cannot set it)',
      }),
    ),
  },
  { additionalProperties: false },
)
